"""The benchmark's run description quotes the profile of the bundles its methods train."""

import pytest

from evaluation.benchmark import profile_text
from evaluation.methods import MRP, TEACHER, parse_methods
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
