"""minigate.router"""
