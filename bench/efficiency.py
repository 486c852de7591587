"""Flowception vs baselines: FLOPs, wall-clock and memory (see flowception_ext/efficiency.py)."""
import sys
from flowception_ext.efficiency import main
sys.exit(main(sys.argv[1:]))
