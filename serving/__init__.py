"""minigate.serving"""
