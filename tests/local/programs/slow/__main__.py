"""A program that takes its time (bounded): the test interrupts the render while it runs."""
import sys
import time

print("program started", file=sys.stderr, flush=True)
time.sleep(30)
