"""minigate.logger"""
