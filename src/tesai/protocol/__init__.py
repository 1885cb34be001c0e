"""The versioned wire contract between the control plane and the provider agent.

Only pydantic and numpy live here: the agent imports this package on hosts that have none of the
server's dependencies. ``v1`` holds the message models; ``proof`` the proof-of-compute helpers
that the agent (to produce) and the server (to check) share.
"""
