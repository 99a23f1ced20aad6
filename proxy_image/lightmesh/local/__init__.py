"""Local mode: the whole mesh on loopback, without a cluster.

``render`` turns a Pulumi program into manifests offline; ``cluster`` turns manifests into the state a
cluster would have (pods with 127.x addresses, ready EndpointSlices); ``standins`` serves the example
images; ``harness`` runs the real controller (file source), mesh DNS and proxy around them.
"""
