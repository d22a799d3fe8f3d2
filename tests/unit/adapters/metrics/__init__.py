"""Tests of adapters/metrics: one process's exposition, the workers' shared layout (fake
workers in this process, each writing the files a spawned worker would), and the supervisor's
directory."""
