"""A program that gives up: ``lightmesh render`` must say so, not exit 3 silently."""
import sys

sys.exit(3)
