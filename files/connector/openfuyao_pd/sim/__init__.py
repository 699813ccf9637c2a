"""A vLLM-like prefill/decode engine simulator for testing PD proxies without accelerators.

Entry points: ``pd-engine-sim`` (``openfuyao_pd.sim.__main__:main``) and, in-process,
``openfuyao_pd.sim.server.SimConfig`` / ``build_app`` / ``SimRunner``.
"""
