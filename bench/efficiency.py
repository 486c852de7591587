"""Flowception vs baselines: FLOPs, wall-clock and memory (see flowception_ext/efficiency.py)."""
if __name__ == "__main__":  # guard: the peak-memory child process re-imports this module
    import sys
    from flowception_ext.efficiency import main
    sys.exit(main(sys.argv[1:]))
