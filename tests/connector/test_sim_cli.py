"""The command line: vLLM's flags (as the plan emits them) are accepted; bad input gets one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from openfuyao_pd.sim.__main__ import config_from_args, main, parse_args

ROOT = Path(__file__).resolve().parents[2]
EXPECTED_PROTOCOL = {"MooncakeConnectorV1": "mooncake_v1", "MooncakeConnector": "mooncake",
                     "NixlConnector": "nixl", "UCMConnector": "centralized", "ExampleConnector": "centralized",
                     "MooncakeLayerwiseConnector": "mooncake_layerwise",
                     # vllm-ascend's KV pool: MooncakeConnectorV1 moves KV P->D, AscendStoreConnector is the pool
                     "MultiConnector": "mooncake_v1"}


def _config(*argv: str):
    args, unknown = parse_args(list(argv))
    return config_from_args(args), unknown


def test_api_server_style_with_unknown_vllm_flags():
    ktc = {"kv_connector": "MooncakeConnectorV1", "kv_role": "kv_producer", "kv_port": "20001", "engine_id": "0",
           "kv_connector_extra_config": {"prefill": {"dp_size": 1, "tp_size": 2}}}
    config, unknown = _config(
        "--model", "/models/m", "--served-model-name", "m", "--host", "0.0.0.0", "--port", "8100",
        "--tensor-parallel-size", "2", "--data-parallel-size", "1", "--data-parallel-address", "10.0.0.1",
        "--data-parallel-rpc-port", "13389", "--seed", "1024", "--max-model-len", "17000",
        "--max-num-batched-tokens", "8000", "--max-num-seqs", "20", "--trust-remote-code", "--enforce-eager",
        "--gpu-memory-utilization", "0.9", "--block-size", "128", "--dtype", "bfloat16",
        "--no-enable-prefix-caching", "--scheduling-policy", "priority", "--kv-transfer-config", json.dumps(ktc))
    assert (config.protocol, config.kv_role, config.kv_port, config.engine_id) == ("mooncake_v1", "kv_producer",
                                                                                  20001, "0")
    assert (config.model, config.model_name, config.port, config.tensor_parallel_size) == ("/models/m", "m", 8100, 2)
    assert (config.max_model_len, config.max_num_seqs, config.block_size, config.seed) == (17000, 20, 128, 1024)
    assert config.scheduling_policy == "priority" and config.enable_prefix_caching is False
    assert config.api_key is None
    assert config.advertise_host not in ("0.0.0.0", "") and config.in_process is False
    assert "--enforce-eager" in unknown and "--data-parallel-rpc-port" in unknown


def test_serve_style_and_sim_flags():
    config, _ = _config("serve", "tiny", "--sim-seed", "9", "--sim-prefill-ms-per-token", "0.5",
                        "--sim-decode-step-ms", "20", "--sim-max-seqs", "4", "--sim-kv-capacity-blocks", "64",
                        "--sim-fault", "delay:10", "--sim-fault", "no-params", "--sim-kv-bytes-per-token", "0",
                        "--sim-mooncake", "off")
    assert (config.model, config.seed, config.prefill_ms_per_token, config.decode_step_ms) == ("tiny", 9, 0.5, 20)
    assert (config.max_num_seqs, config.kv_capacity_blocks, config.kv_bytes_per_token) == (4, 64, 0)
    assert config.faults == ["delay:10", "no-params"] and config.protocol == "none"


def test_upstream_mooncake_bootstrap_port_from_env(monkeypatch):
    monkeypatch.setenv("VLLM_MOONCAKE_BOOTSTRAP_PORT", "9100")
    ktc = json.dumps({"kv_connector": "MooncakeConnector", "kv_role": "kv_producer"})
    config, _ = _config("serve", "m", "--kv-transfer-config", ktc)
    assert (config.protocol, config.bootstrap_port) == ("mooncake", 9100)
    consumer, _ = _config("serve", "m", "--kv-transfer-config", ktc.replace("producer", "consumer"))
    assert consumer.bootstrap_port is None


def test_ucm_storage_backends_from_config_file(tmp_path):
    ucm = tmp_path / "ucm.yaml"
    ucm.write_text("ucm_connectors:\n  - ucm_connector_name: UcmPipelineStore\n    ucm_connector_config:\n"
                   "      store_pipeline: Cache|Posix\n      storage_backends: /mnt/a:/mnt/b\n")
    ktc = {"kv_connector": "UCMConnector", "kv_role": "kv_both",
           "kv_connector_extra_config": {"UCM_CONFIG_FILE": str(ucm)}}
    config, _ = _config("serve", "m", "--kv-transfer-config", json.dumps(ktc))
    assert (config.protocol, config.shared_storage_path) == ("centralized", "/mnt/a")


@pytest.mark.parametrize(("argv", "message"), [
    (["serve", "m", "--kv-transfer-config", "{bad"], "--kv-transfer-config is not valid JSON"),
    (["serve", "m", "--kv-transfer-config", '{"kv_connector": "P2pNcclConnector"}'], "is not simulated"),
    (["serve", "m", "--kv-transfer-config", '{"kv_connector": "NixlConnector", "kv_role": "kv_x"}'],
     "kv_role 'kv_x' unknown"),
    (["serve", "m", "--kv-transfer-config", '{"kv_connector": "ExampleConnector"}'], "needs a shared directory"),
    (["serve", "m", "--sim-fault", "explode"], "unknown fault 'explode'"),
    (["--port", "1"], "no model"),
    (["serve", "m", "--block-size", "0"], "block_size must be positive"),
])
def test_bad_input_is_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pd-engine-sim: error: ") and message in err and "\n" not in err


def test_port_in_use_is_one_line(capsys):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main(["serve", "m", "--port", str(port), "--sim-mooncake", "off"]) == 1
    err = capsys.readouterr().err.strip()
    assert f"cannot listen on 127.0.0.1:{port}" in err and "\n" not in err


def _plans():
    """Every instance of every shipped inventory's plan (skipped when the planner is absent)."""
    pytest.importorskip("ansible")
    sys.path.insert(0, str(ROOT / "tests" / "unit"))
    try:
        from ansible_collections.openfuyao.pd.plugins.module_utils.pd_plan import build_plan
        from plan_support import load_inventory
    except ImportError as exc:
        pytest.skip(f"planner not importable: {exc}")
    finally:
        sys.path.remove(str(ROOT / "tests" / "unit"))
    for inventory in sorted(p.name for p in (ROOT / "inventories").iterdir() if (p / "cluster.ini").exists()):
        yield inventory, build_plan(load_inventory(inventory))


def test_the_plans_argv_starts_the_simulator(tmp_path):
    """The roles may launch the simulator with the plan's argv in place of vLLM's."""
    checked = 0
    for inventory, plan in _plans():
        for inst in plan["instances"]:
            argv = list(inst["argv"])
            argv = argv[1:] if argv[0] == "vllm" else argv[3:]  # `vllm serve M` | `python3 -m <module> --model M`
            ktc_at = argv.index("--kv-transfer-config") + 1
            ktc = json.loads(argv[ktc_at])
            extra = ktc.get("kv_connector_extra_config") or {}
            for name, text in inst["files"].items():  # UCM config files: render them locally
                local = tmp_path / inventory / Path(name).name
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_text(text)
                if extra.get("UCM_CONFIG_FILE") == name:
                    extra["UCM_CONFIG_FILE"] = str(local)
            argv[ktc_at] = json.dumps(ktc)
            pooled = any(c.get("kv_connector") == "AscendStoreConnector" for c in extra.get("connectors", []))
            if pooled:  # the simulator's stand-in for the Mooncake store is a directory
                argv += ["--sim-kv-pool", str(tmp_path / inventory / "pool")]
            config, _ = _config(*argv)
            assert config.kv_pool == pooled, f"{inventory}/{inst['name']}"
            where = f"{inventory}/{inst['name']}"
            assert config.protocol == EXPECTED_PROTOCOL[ktc["kv_connector"]], where
            assert config.kv_role == inst["kv_role"], where
            assert config.port == inst["http_port"], where
            assert config.tensor_parallel_size == inst["tensor_parallel_size"], where
            assert config.engine_id == str(ktc.get("engine_id") or config.engine_id), where
            assert config.model_name == plan["model"]["served_name"], where
            if inst["kv_port"] is not None and config.protocol == "mooncake_v1":
                assert config.kv_port == int(inst["kv_port"]), where
            if config.protocol == "centralized":
                assert config.shared_storage_path, where
            checked += 1
    assert checked >= 4


def test_kv_size_from_the_model_directory(tmp_path):
    model_dir = tmp_path / "qwen"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({
        "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096,
        "head_dim": 128, "torch_dtype": "bfloat16"}))
    config, _ = _config("serve", str(model_dir))
    assert config.kv_bytes_per_token == 36 * 2 * 8 * 128 * 2
    config, _ = _config("serve", str(model_dir), "--sim-kv-bytes-per-token", "10")
    assert config.kv_bytes_per_token == 10
    config, _ = _config("serve", "no-such-dir")
    assert config.kv_bytes_per_token == 2048


def test_kv_size_of_the_builtin_tiny_model(tmp_path):
    """The tiny model the collection builds gives the simulator's default KV size."""
    tinymodel = pytest.importorskip("openfuyao_pd.tinymodel")
    from openfuyao_pd.sim.model import TINY_LLAMA_KV_BYTES_PER_TOKEN, kv_bytes_per_token_from_hf_config

    assert kv_bytes_per_token_from_hf_config(tinymodel.CONFIG) == TINY_LLAMA_KV_BYTES_PER_TOKEN


def test_unusable_shared_storage_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    ktc = {"kv_connector": "ExampleConnector", "kv_role": "kv_producer",
           "kv_connector_extra_config": {"shared_storage_path": str(blocker / "kv")}}
    assert main(["serve", "m", "--port", "0", "--kv-transfer-config", json.dumps(ktc)]) == 1
    err = capsys.readouterr().err.strip()
    assert f"shared KV storage {blocker / 'kv'} is not usable" in err and "\n" not in err
