"""One module per ESP added after the first four: ``signer() -> EspSigner``, found automatically."""
