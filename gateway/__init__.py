"""minigate.gateway"""
