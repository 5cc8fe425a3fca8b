"""Partner graphs and training targets (gunpowder nodes) on hand-built volumes."""

from __future__ import annotations

import gunpowder as gp
import numpy as np
import pytest
from funlib.persistence import Array

from synful.gp import AddPartnerVectorMap, AddSynapseIndicator, PartnerSource
from synful.io.partners import empty_partners

VS = gp.Coordinate((40, 4, 4))
LABELS, PRE, POST = gp.ArrayKey("LABELS"), gp.GraphKey("PRE"), gp.GraphKey("POST")
IND, VEC, MASK = gp.ArrayKey("IND"), gp.ArrayKey("VEC"), gp.ArrayKey("MASK")


def _partners(pairs):
    """pairs: [((pre z, y, x), (post z, y, x)), ...] in nm."""
    p = empty_partners(len(pairs))
    for i, (pre, post) in enumerate(pairs):
        p[i]["id"] = i
        p[i]["pre_z"], p[i]["pre_y"], p[i]["pre_x"] = pre
        p[i]["post_z"], p[i]["post_y"], p[i]["post_x"] = post
    return p


def _two_neurons():
    """10 x 40 x 40 voxels at 40 x 4 x 4 nm: neuron 1 for y < 80 nm, neuron 2 above."""
    labels = np.zeros((10, 40, 40), np.uint64)
    labels[:, :20] = 1
    labels[:, 20:] = 2
    return labels


def _request(pipeline, out_roi, keys=(IND, VEC, MASK)):
    req = gp.BatchRequest()
    for k in keys:
        req[k] = gp.ArraySpec(roi=out_roi)
    with gp.build(pipeline):
        return pipeline.request_batch(req)


def _pipeline(labels, partners, blob_radius=50, d_radius=50, pre_context=400):
    src = (gp.ArraySource(LABELS, Array(labels, offset=(0, 0, 0), voxel_size=VS)),
           PartnerSource(partners, PRE, POST)) + gp.MergeProvider()
    return (src + AddSynapseIndicator(POST, LABELS, IND, radius=blob_radius)
            + AddPartnerVectorMap(PRE, POST, LABELS, VEC, MASK, radius=d_radius, pre_context=pre_context))


def _positions(roi, shape):
    """World positions (nm) of the voxels of an array on ``roi``: begin + index * voxel size."""
    idx = np.indices(shape)
    return np.stack([roi.begin[d] + idx[d] * VS[d] for d in range(3)])


def test_vectors_point_to_pre_site_in_nm_and_blob_stays_in_post_neuron():
    pre, post = (200, 100, 80), (200, 60, 80)  # post in neuron 1 (y < 80), pre in neuron 2
    batch = _request(_pipeline(_two_neurons(), _partners([(pre, post)])), gp.Roi((80, 40, 40), (240, 80, 80)))
    ind, vec, mask = batch[IND].data, batch[VEC].data, batch[MASK].data
    assert ind.shape == mask.shape == (6, 20, 20) and vec.shape == (3, 6, 20, 20)
    assert ind.dtype == np.uint8 and vec.dtype == np.float32 and mask.dtype == np.float32

    pos = _positions(batch[IND].spec.roi, ind.shape)
    dist = np.sqrt(((pos - np.array(post)[:, None, None, None]) ** 2).sum(0))
    in_neuron = pos[1] < 80
    expected = (dist <= 50) & in_neuron
    assert expected.sum() > 20
    np.testing.assert_array_equal(ind, expected.astype(np.uint8))
    np.testing.assert_array_equal(mask, expected.astype(np.float32))
    # the ball would reach y up to 110 nm: the part in neuron 2 is cut off
    assert not ind[pos[1] >= 80].any()

    # every masked voxel holds the vector (nm) from itself to the pre site; zero elsewhere
    want = np.array(pre, dtype=np.float64)[:, None, None, None] - pos
    np.testing.assert_allclose(vec[:, expected], want[:, expected], atol=1e-4)
    assert not vec[:, ~expected].any()


def test_anisotropic_ball_spans_one_section_per_40nm():
    labels = np.ones((10, 40, 40), np.uint64)
    post = (200, 80, 80)
    batch = _request(_pipeline(labels, _partners([((200, 80, 120), post)]), blob_radius=90, d_radius=50),
                     gp.Roi((0, 0, 0), (400, 160, 160)))
    z_with_blob = np.flatnonzero(batch[IND].data.any(axis=(1, 2)))
    np.testing.assert_array_equal(z_with_blob, [3, 4, 5, 6, 7])  # 200 +- 90 nm -> sections 3..7
    z_with_vec = np.flatnonzero(batch[MASK].data.any(axis=(1, 2)))
    np.testing.assert_array_equal(z_with_vec, [4, 5, 6])  # 200 +- 50 nm
    # in-plane through the site: x from 80 - 90 to 80 + 90 nm, i.e. pixels 0 (x = -10 clipped) .. 42 -> 0..39
    assert batch[IND].data[5, 20, :].sum() == 40
    assert batch[IND].data[5, 20, :].sum() > batch[IND].data[3, 20, :].sum() > 0


def test_post_site_outside_request_paints_into_it_and_nearest_post_wins():
    labels = np.ones((10, 40, 40), np.uint64)
    pre_a, post_a = (200, 40, 20), (200, 40, 30)
    pre_b, post_b = (200, 40, 140), (200, 40, 70)
    out = gp.Roi((160, 0, 40), (80, 160, 80))  # post_a (x = 30) lies outside, 10 nm left of it
    batch = _request(_pipeline(labels, _partners([(pre_a, post_a), (pre_b, post_b)]), d_radius=40), out)
    pos = _positions(batch[VEC].spec.roi, batch[MASK].data.shape)
    mask = batch[MASK].data > 0
    assert mask[:, :, 0].any()  # painted by post_a from outside the ROI
    d_a = np.sqrt(((pos - np.array(post_a)[:, None, None, None]) ** 2).sum(0))
    d_b = np.sqrt(((pos - np.array(post_b)[:, None, None, None]) ** 2).sum(0))
    np.testing.assert_array_equal(mask, (d_a <= 40) | (d_b <= 40))
    nearer_a = mask & (d_a < d_b)
    nearer_b = mask & (d_b < d_a)
    assert nearer_a.any() and nearer_b.any()
    vec = batch[VEC].data
    np.testing.assert_allclose(vec[:, nearer_a], (np.array(pre_a)[:, None, None, None] - pos)[:, nearer_a], atol=1e-4)
    np.testing.assert_allclose(vec[:, nearer_b], (np.array(pre_b)[:, None, None, None] - pos)[:, nearer_b], atol=1e-4)


def test_background_sites_and_missing_pre_sites_paint_no_vectors():
    labels = _two_neurons()
    labels[:, :, 30:] = 0  # background strip at x >= 120 nm
    pairs = [((200, 40, 40), (200, 40, 140)),    # post on background: paints nothing
             ((200, 150, 80), (200, 120, 80))]   # post in neuron 2, pre inside the request
    batch = _request(_pipeline(labels, _partners(pairs), pre_context=0), gp.Roi((80, 100, 40), (240, 60, 80)))
    assert batch[IND].data.any() and batch[MASK].data.any()
    assert not batch[IND].data[..., 20:].any()  # x >= 120 nm: background post paints nothing

    far = _partners([((200, 150, 80), (200, 60, 80))])  # pre 90 nm beyond the request below
    out = gp.Roi((80, 40, 40), (240, 60, 80))          # y in [40, 100): pre at y = 150 is outside
    no_ctx = _request(_pipeline(_two_neurons(), far, pre_context=0), out)
    assert no_ctx[IND].data.any(), "the indicator does not need the pre site"
    assert not no_ctx[MASK].data.any() and not no_ctx[VEC].data.any()
    with_ctx = _request(_pipeline(_two_neurons(), far, pre_context=100), out)
    assert with_ctx[MASK].data.any()


def test_partner_source_provides_sites_inside_the_requested_roi():
    pairs = [((0, 0, 0), (40, 4, 4)), ((400, 400, 400), (440, 404, 404))]
    src = PartnerSource(_partners(pairs), PRE, POST)
    req = gp.BatchRequest()
    req[PRE] = gp.GraphSpec(roi=gp.Roi((0, 0, 0), (100, 100, 100)))
    req[POST] = gp.GraphSpec(roi=gp.Roi((0, 0, 0), (1000, 1000, 1000)))
    with gp.build(src):
        batch = src.request_batch(req)
    pre_nodes = list(batch.graphs[PRE].nodes)
    post_nodes = sorted(batch.graphs[POST].nodes, key=lambda n: n.id)
    assert [n.id for n in pre_nodes] == [0]
    assert [n.id for n in post_nodes] == [0, 1]
    assert [n.attrs["partner"] for n in post_nodes] == [0, 1]
    np.testing.assert_array_equal(post_nodes[1].location, [440, 404, 404])


@pytest.mark.parametrize("radius", [0.0, 4.0])
def test_tiny_radius_paints_only_the_site_voxel(radius):
    labels = np.ones((10, 40, 40), np.uint64)
    batch = _request(_pipeline(labels, _partners([((200, 80, 120), (200, 80, 80))]), blob_radius=radius,
                               d_radius=radius), gp.Roi((0, 0, 0), (400, 160, 160)))
    expected = 1 if radius == 0 else 5  # the site voxel, plus its 4 in-plane neighbours at 4 nm
    assert batch[IND].data.sum() == expected and batch[MASK].data.sum() == expected
    np.testing.assert_allclose(batch[VEC].data[:, 5, 20, 20], [0, 0, 40])


def test_elastic_augment_keeps_partner_graphs_on_thin_inputs():
    """A thin input (8 sections) must not collapse the deformation grid and lose the partner sites."""
    import gunpowder as gp
    from funlib.persistence import Array

    from synful.gp import PartnerSource
    from synful.gp.augment import anisotropic_elastic_augment, elastic_subsample
    from synful.io.partners import empty_partners

    assert elastic_subsample((8, 148, 148)) == 2 and elastic_subsample((42, 430, 430)) == 8
    vs = (40, 8, 8)
    request_roi = gp.Roi((0, 200, 200), (320, 1184, 1184))
    centre = np.array(request_roi.center, dtype=float)
    p = empty_partners(1)
    p[0]["post_z"], p[0]["post_y"], p[0]["post_x"] = centre.astype(int)
    p[0]["pre_z"], p[0]["pre_y"], p[0]["pre_x"] = centre.astype(int) + (0, 80, 0)
    raw = Array(np.random.default_rng(0).integers(0, 255, (20, 300, 300), dtype=np.uint8), offset=(0, 0, 0),
                voxel_size=vs)
    raw_key, pre, post = gp.ArrayKey("RAW_T"), gp.GraphKey("PRE_T"), gp.GraphKey("POST_T")
    pipeline = ((gp.ArraySource(raw_key, raw, interpolatable=True) + gp.Pad(raw_key, None)),
                PartnerSource(p, pre, post)) + gp.MergeProvider()
    pipeline += anisotropic_elastic_augment((8, 148, 148))
    request = gp.BatchRequest()
    request[raw_key] = gp.ArraySpec(roi=request_roi)
    request[post] = gp.GraphSpec(roi=request_roi)
    request[pre] = gp.GraphSpec(roi=request_roi)
    with gp.build(pipeline):
        for _ in range(5):
            batch = pipeline.request_batch(request)
            assert batch[raw_key].data.shape == (8, 148, 148)
            posts = list(batch[post].nodes)
            assert len(posts) == 1  # the site at the centre survives rotation and jitter
            assert np.linalg.norm(np.asarray(posts[0].location, float) - centre) < 150
            assert len(list(batch[pre].nodes)) == 1
