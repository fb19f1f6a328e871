"""What is made of finished runs: the one metrics.json reader, tables and subgroup tables,
paired comparisons of two checkpoints, and leaderboard submissions (written, validated as
data, ranked and published)."""
