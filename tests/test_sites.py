"""Site: the one place hook names are built and parsed."""

import pytest
import torch

from interp.errors import ShapeError, SiteError
from interp.sites import COMPONENTS, Site, check_shape, expected_shape, parse_sites, validate_site


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_hook_name_round_trip(component):
    layer = 3 if COMPONENTS[component].per_layer else None
    site = Site(component, layer)
    assert Site.parse(site.hook_name) == site
    assert Site.parse(str(site)) == site


def test_known_hook_names():
    assert Site("z", 3, 1).hook_name == "blocks.3.attn.hook_z"
    assert Site("resid_post", 0).hook_name == "blocks.0.hook_resid_post"
    assert Site("pattern", 11).hook_name == "blocks.11.attn.hook_pattern"
    assert Site("embed").hook_name == "hook_embed"
    assert str(Site("z", 3, 1)) == "z.3.1" and Site.parse("z.3.1") == Site("z", 3, 1)


def test_parse_sites_expands_bare_components():
    sites = parse_sites("resid_post, pattern.1,z.0.2", n_layers=2)
    assert sites == [Site("resid_post", 0), Site("resid_post", 1), Site("pattern", 1), Site("z", 0, 2)]
    assert parse_sites(["embed", "embed"], n_layers=2) == [Site("embed")]


def test_typos_get_suggestions():
    with pytest.raises(SiteError, match="resid_post"):
        Site("resid_psot", 1)
    with pytest.raises(SiteError, match="Did you mean 'pattern'"):
        parse_sites("patern", n_layers=2)
    with pytest.raises(SiteError, match="out of range"):
        parse_sites("resid_post.5", n_layers=2)


def test_invalid_layer_and_head():
    with pytest.raises(SiteError):
        Site("resid_post")  # needs a layer
    with pytest.raises(SiteError):
        Site("embed", 2)  # model-wide
    with pytest.raises(SiteError):
        Site("resid_post", 1, head=0)  # no heads


def test_validate_against_model(toy_llama):
    validate_site(Site("z", 1, 3), toy_llama)
    with pytest.raises(SiteError, match="2 layers"):
        validate_site(Site("z", 2), toy_llama)
    with pytest.raises(SiteError, match="heads"):
        validate_site(Site("k", 1, 3), toy_llama)  # toy llama has 2 KV heads


def test_shapes(toy_llama):
    cfg = toy_llama.cfg
    assert expected_shape(Site("z", 0), cfg, 2, 5) == (2, 5, 4, 16)
    assert expected_shape(Site("k", 0), cfg, 2, 5) == (2, 5, 2, 16)
    assert expected_shape(Site("pattern", 0), cfg, 2, 5) == (2, 4, 5, 5)
    check_shape(Site("z", 0), torch.zeros(2, 5, 4, 16), cfg)
    with pytest.raises(ShapeError, match=r"expected \(batch, pos, head, d_head\)"):
        check_shape(Site("z", 0), torch.zeros(2, 5, 64), cfg)


def test_select_head():
    act = torch.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    assert torch.equal(Site("z", 0, 2).select(act), act[:, :, 2])
    pat = torch.arange(2 * 4 * 3 * 3).reshape(2, 4, 3, 3)
    assert torch.equal(Site("pattern", 0, 1).select(pat), pat[:, 1])
