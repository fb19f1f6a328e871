"""Render the study-layout tables (markdown) and radar plot (PNG) from run dirs / metrics.json.

    python scripts/render_tables.py outputs/run-a outputs/run-b --out tables/ [--metric flip_rate]
"""

import sys

from mibench.tables import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
