"""How a request proves it comes from its ESP: HTTP basic auth, Amazon SNS signatures, Standard
Webhooks (Svix) signatures and their nonces.
"""
