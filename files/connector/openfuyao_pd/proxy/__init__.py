"""openfuyao.pd prefill/decode proxy (see docs/proxy.md)."""
