"""accelcore: a Python model of the Linux compute-accelerator subsystem."""
