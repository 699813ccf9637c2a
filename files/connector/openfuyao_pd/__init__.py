"""Host-side tools of the openfuyao.pd collection, deployed by roles/proxy and roles/vllm_pd."""

__version__ = "0.1.0"
