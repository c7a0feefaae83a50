"""Pure statistics shared by the live experiments and the offline report.

No files, no DuckDB, no clock, no numpy: the callers pass counts or small samples in.
The tests check every formula against scipy.
"""
