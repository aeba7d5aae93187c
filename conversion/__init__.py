"""minigate.conversion: the offline loop (S3-S6) over the call log: task discovery, candidates,
datasets, replay, router fit and the report. Nothing here runs per request or calls the gateway.
"""
