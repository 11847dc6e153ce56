# The provider module's sources (relative to provider/), shared by the main build and
# the fuzz build (tests/fuzz).
set(P11TLS_PROVIDER_SOURCES
  provider.c config.c routing.c keymgmt_rsa.c sig_rsa.c asym_rsa.c kdf_tls1_prf.c
  kdf_tls13.c mac_hmac.c keymgmt_ec.c exch_ecdh.c capabilities.c store.c decoder_pem_uri.c decoder_uri_der.c)
