"""The benchmark's run description quotes the profile of the bundles its methods train."""

import pytest

from evaluation.benchmark import profile_text
from evaluation.methods import DUALTASK, MRP, TEACHER, parse_methods
from evaluation.runner import merged_settings


def _described(settings: dict, mammograms: bool = False) -> str:
    sizes = (f"input voxels {settings['spatial_size'] or 'as prepared'}, "
             + (f"mammogram pixels {settings['mg_size'] or 'as prepared'}, " if mammograms else ""))
    return (f"epochs {settings['epochs']}, widen_factor {settings['widen_factor']}, {sizes}batch size "
            f"{settings['batch_size']}, learning rate {settings['learning_rate']}, "
            + (f"moving average of the weights (momentum {settings['ema_momentum']})" if settings["ema_momentum"]
               else "no weight average"))


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_mrp_methods_quote_the_mrp_fusion_profile(profile):
    mrp = merged_settings(MRP, ("train",), profile)
    pcr = merged_settings(TEACHER, ("train",), profile)
    assert profile_text(profile, parse_methods("mrp_rhpc,mrp_img,mrp_pre")) == f"{profile}: {MRP}: {_described(mrp, True)}"
    # the two-stage comparison keeps its description; a mixed run names both, with the --epochs given
    assert profile_text(profile, parse_methods("dualtask,lr_ftv")) == f"{profile}: {_described(pcr)}"
    mixed = profile_text(profile, parse_methods("dualtask,mrp"), epochs=3)
    assert mixed == (f"{profile}: pcr_teacher, pcr_dualtask: {_described({**pcr, 'epochs': 3})}; "
                     f"{MRP}: {_described({**mrp, 'epochs': 3}, True)}")


def test_stage_two_settings_that_differ_from_the_teacher_are_named(monkeypatch):
    """A stage-2 profile of its own (here more epochs) is quoted beside the teacher's, not hidden by it."""
    from evaluation import benchmark

    original = benchmark.bundle_settings

    def longer_stage_two(profile, bundle=TEACHER):
        settings = original(profile, bundle)
        return {**settings, "epochs": 60} if bundle == DUALTASK else settings

    monkeypatch.setattr(benchmark, "bundle_settings", longer_stage_two)
    pcr = merged_settings(TEACHER, ("train",), "cpu")
    assert profile_text("cpu", parse_methods("dualtask,teacher")) == (
        f"cpu: {TEACHER}: {_described(pcr)}; {DUALTASK}: {_described({**pcr, 'epochs': 60})}")
