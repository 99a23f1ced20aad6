"""Controller tests: pure core with golden files, shell against kmock."""
