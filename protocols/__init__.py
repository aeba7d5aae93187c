"""minigate.protocols: pure translators between chat completions and other wire protocols (Anthropic
Messages). They import no room, so the gateway (ingress) and serving (egress) can both use them.
"""
