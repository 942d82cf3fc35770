"""Shared fixtures: synthetic X-ray-like folders made in the test, and the real data slice."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import SHARED_DATA, write_kaggle_layout


@pytest.fixture(scope="session")
def synthetic_source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kaggle") / "chest_xray"
    return write_kaggle_layout(root, {"train": 60, "test": 20}, seed=1)


@pytest.fixture(scope="session")
def data_dir(synthetic_source, tmp_path_factory) -> Path:
    """The synthetic source prepared at 32 px (train / val / test)."""
    from pneumoscope.data.prepare import prepare
    from pneumoscope.data.preprocess import PreprocessConfig

    out = tmp_path_factory.mktemp("cache")
    prepare(
        synthetic_source,
        out,
        PreprocessConfig(img_size=32),
        val_fraction=0.2,
        seed=0,
        workers=2,
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def run_dir(data_dir, tmp_path_factory) -> Path:
    """One small trained, calibrated run shared by every test that needs a model."""
    from pneumoscope.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("run")
    train(
        TrainConfig(
            data=str(data_dir),
            out=str(out),
            model="seed_cnn",
            epochs=8,
            batch_size=16,
            lr=3e-3,
            seed=0,
            patience=8,
            # 96 training images for 8 epochs is a chaotic trajectory: any change of
            # float rounding (the memory layout, here) is like another seed, and some
            # seeds need more epochs in either layout. This seed learns in NCHW and float32;
            # the training tests cover channels-last and bf16 (the default where the CPU
            # has bf16 units).
            channels_last=False,
            precision="fp32",
        ),
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def resnet_run(data_dir, tmp_path_factory) -> Path:
    """A one-epoch ResNet-18 at 32 px: global pooling and batch norms, so it takes any size
    (the evaluation-size tests)."""
    from pneumoscope.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("resnet")
    cfg = TrainConfig(data=str(data_dir), out=str(out), model="resnet18", epochs=1,
                      batch_size=16, precision="fp32", channels_last=False)  # fmt: skip
    train(cfg, progress=False)
    return out


@pytest.fixture(scope="session")
def data48(synthetic_source, tmp_path_factory) -> Path:
    """The synthetic source prepared at 48 px, splits as ``data_dir``'s."""
    from pneumoscope.data.prepare import prepare
    from pneumoscope.data.preprocess import PreprocessConfig

    out = tmp_path_factory.mktemp("cache48")
    prepare(synthetic_source, out, PreprocessConfig(img_size=48), val_fraction=0.2, seed=0,
            workers=2, progress=False)  # fmt: skip
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real X-rays beside the repository. Missing data is a failure, never a skip."""
    if not (SHARED_DATA / "chest_xray_224" / "train").is_dir():
        pytest.fail(
            f"real test data missing: {SHARED_DATA}/chest_xray_224 (the repository "
            "expects ../shared/data beside it; set PNEUMOSCOPE_SHARED_DATA to override)"
        )
    return SHARED_DATA


@pytest.fixture(scope="module")
def ray_cluster():
    """A small local Ray cluster for one test module (two CPUs, 300 MB object store). Ray is
    the ray extra, which CI installs: without it this fails, it does not skip."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=300 * 2**20,
        log_to_driver=False,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture
def one_torch_thread():
    """Tests share two cores with other jobs: a single intra-op thread avoids OpenMP
    spin-waiting under contention (several times the CPU time for the same result)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- tiers -------------------------------------------------------------------------------
# `bash scripts/test.sh --quick` runs `-m "not slow"`: the edit-test loop, under 3 minutes on
# 2 cores. A test is slow when it trains a model, starts a cluster or a server process, or
# drives a real browser or PACS; it is marked here, by the fixtures it uses and the module
# it lives in, so a new test that uses them lands in the slow tier by itself. A test may
# also say so itself with @pytest.mark.slow.
SLOW_FIXTURES = {
    "run_dir",  # trains the shared tiny run
    "resnet_run",  # trains a ResNet-18
    "ray_cluster",  # starts a local Ray cluster
    "orthanc",  # starts an Orthanc PACS
    "timm_run",  # trains (tests/inference/test_predict_ood.py)
    "seed2_run",  # trains (tests/training/test_training.py)
    "runs",  # trains four runs (tests/training/test_precision.py)
    "population_retrained",  # retrains the population check (test_population_check.py)
}
SLOW_MODULES = {
    "tests/bench",  # benchmark scripts in subprocesses that import torch and train
    "tests/e2e",  # the whole pipeline, on synthetic and real films
    "tests/packaging",  # builds the wheel and installs it into a fresh venv
    "tests/pacs",  # the PACS round trip through Orthanc
    "tests/serving/test_browser.py",  # Chromium through Playwright
    "tests/serving/test_hostile_clients.py",  # a real server under hostile clients
    "tests/serving/test_server_process.py",  # `pneumoscope serve` as a process
    "tests/serving/test_replicas.py",  # `pneumoscope serve --workers 2` as processes
    "tests/serving/test_proxy.py",  # HAProxy in front of two `pneumoscope serve` processes
    "tests/training/test_resume_ddp.py",  # trains, kills, resumes; DDP in two processes
    "tests/inference/test_pacs_folder.py",  # trains a run, predicts a PACS export by CLI
}
# Single tests over about 3 s on 2 cores (`pytest --durations`): they train, or start a
# process that imports torch.
SLOW_TESTS = {
    "tests/cli/test_cli.py::test_cli_end_to_end_with_a_bad_file",
    "tests/cli/test_cli.py::test_train_and_evaluate_on_a_folder_that_was_not_prepared",
    "tests/cli/test_download_cli.py::test_download_then_prepare_reads_the_folder_as_it_is",
    "tests/data/test_data_report.py::test_cli_prepare_with_a_config_prints_the_report",
    "tests/data/test_hostile_decode.py::test_16bit_4000x5000_film_decodes_to_the_same_pixels",
    "tests/data/test_near_index.py::test_index_gives_the_exhaustive_pairs_on_real_xrays",
    "tests/inference/test_explain.py::test_heatmap_finds_the_blob_after_training",
    "tests/inference/test_export.py::test_stale_export_is_refused",
    "tests/inference/test_ray_predict.py::test_predict_cli_refuses_a_bad_shard_and_an_unknown_engine",
    "tests/inference/test_ray_predict.py::test_nothing_imports_ray_on_import",
    "tests/inference/test_ray_predict.py::test_ray_engine_refuses_an_address_that_does_not_answer",
    "tests/model/test_weights.py::test_pretrained_from_a_prepopulated_hugging_face_cache",
    "tests/model/test_weights.py::test_train_from_a_timm_file_records_what_was_loaded",
    "tests/model/test_weights.py::test_pretrained_offline_is_one_line_with_the_way_out",
    "tests/model/test_weights.py::test_fine_tune_from_a_previous_run",
    "tests/serving/test_intended_use.py::test_unknown_rules_are_refused_in_one_line",
    "tests/training/test_ensemble.py::test_composed_head_is_the_mean_of_the_members_logits",
    "tests/training/test_precision.py::test_cli_precision_flag_reaches_the_card",
    "tests/training/test_precision.py::test_the_quickstart_asks_the_module_for_its_preset",
    "tests/training/test_training.py::test_cli_config_then_run_config_yaml_repeats_the_run_bit_for_bit",
    "tests/training/test_training.py::test_seed2_crop_survives_onnx_export",
    "tests/training/test_training.py::test_runs_without_the_new_card_fields_load_unchanged",
}


def pytest_collection_modifyitems(config, items):
    root = Path(__file__).resolve().parents[1]
    for item in items:
        rel = Path(item.path).resolve().relative_to(root).as_posix()
        slow_module = any(rel == m or rel.startswith(m + "/") for m in SLOW_MODULES)
        test = f"{rel}::{item.originalname}"
        if slow_module or test in SLOW_TESTS or SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
