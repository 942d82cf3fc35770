"""`pneumoscope monitor`: the live service's audit log read back against the run it serves.

Beside training and inference (it needs neither): it reads the run folder through the run
contract and scores what the service recorded with evaluation's metrics.
"""
