# The token layer's sources (relative to pkcs11/), shared by the main build and the
# fuzz build (tests/fuzz), so that a new file is added in one place.
set(P11TLS_PKCS11_SOURCES
  names.c log.c uri.c pin.c module.c caps.c token.c session.c objects.c registry.c
  handle.c hmac.c tls12.c tls13.c tls13_const.c ecdh.c pool.c pool_ops.c)
