"""Ray Serve deployments: the compressor and the TinyVAE encoder over HTTP."""
