"""The mitigation fine-tune's parts: what it reads (data), what it minimises (objective),
which weights move (weights), how a run survives a kill (checkpoints), and the before/after
report (report). `mibench-train` (mibench/train.py) strings them together."""
