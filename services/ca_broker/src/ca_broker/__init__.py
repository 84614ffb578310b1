"""ca-broker: the gateway's certificate authority.

Signs peer CSRs with the federation profile (the broker builds every extension itself and copies
nothing from the CSR), checks every issued certificate before returning it, records every serial,
revokes, and publishes the CA bundle and the CRL. Reachable only by the other services.
"""
