"""tools/analysis/erf.py on the CPU at a small input: it writes the PNG and the text summary."""
import numpy as np
import pytest


def test_area_fractions(load_tool):
    erf = load_tool('erf')
    point = np.zeros((9, 9))
    point[4, 4] = 1.0
    fractions = erf.area_fractions(point)
    assert fractions['pixels'] == {p: pytest.approx(1 / 81) for p in erf.MASS_LEVELS}
    assert fractions['centred_square'] == {p: pytest.approx(1 / 81) for p in erf.MASS_LEVELS}
    uniform = erf.area_fractions(np.ones((10, 10)))
    assert uniform['pixels'] == {p: pytest.approx(p) for p in erf.MASS_LEVELS}
    assert uniform['centred_square'][0.9] == 1.0
    assert np.isnan(erf.area_fractions(np.zeros((4, 4)))['pixels'][0.5])


def test_erf_writes_png_and_text(load_tool, tmp_path):
    erf = load_tool('erf')
    result = erf.main(['--arch', 'tiny', '--size', '64', '--num-images', '1', '--out-dir', str(tmp_path)])
    maps = result['maps']
    assert list(maps) == ['VMamba-tiny, random init', 'ResNet-50, random init']
    for score in maps.values():
        assert score.shape == (64, 64) and np.isfinite(score).all() and score.sum() > 0
    png = tmp_path / 'erf.png'
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    text = (tmp_path / 'erf.txt').read_text()
    assert 'VMamba-tiny' in text and 'ResNet-50' in text and '50%' in text
    assert (tmp_path / 'erf.json').is_file() and (tmp_path / 'erf_maps.npz').is_file()
    # The paper's point, visible even at random init: VMamba's gradient mass is spread far wider than ResNet's.
    vmamba, resnet = (result['fractions'][name]['pixels'][0.5] for name in maps)
    assert vmamba > 2 * resnet


def test_erf_reads_an_image_folder(load_tool, tmp_path):
    import mmcv
    erf = load_tool('erf')
    for i in range(2):
        mmcv.imwrite(np.random.default_rng(i).integers(0, 256, (40, 50, 3), dtype=np.uint8), str(tmp_path / f'{i}.png'))
    images = erf.load_images(str(tmp_path), 3, 32)
    assert len(images) == 3 and images[0].shape == (1, 3, 32, 32)
    assert images[0].abs().max() < 3   # ImageNet-normalised
    with pytest.raises(FileNotFoundError):
        erf.load_images(str(tmp_path / 'missing'), 1, 32)


def test_backbone_checkpoints_load(load_tool, tmp_path):
    """--checkpoint / --resnet-checkpoint: a det-style checkpoint (``backbone.`` keys) and a plain state dict."""
    import torch

    from mmvmamba import VMamba
    common = load_tool('analysis_common')
    source = VMamba(arch='tiny', dims=16, depths=(1, 1, 2, 1))
    det_style = {'meta': {}, 'state_dict': {f'backbone.{k}': v for k, v in source.state_dict().items()}}
    det_style['state_dict']['neck.lateral_convs.0.conv.weight'] = torch.zeros(1)
    torch.save(det_style, tmp_path / 'vmamba_det.pth')
    loaded = VMamba(arch='tiny', dims=16, depths=(1, 1, 2, 1))
    common.load_backbone_weights(loaded, str(tmp_path / 'vmamba_det.pth'))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    resnet = common.build_resnet50()
    torch.save(resnet.state_dict(), tmp_path / 'r50.pth')
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in resnet.state_dict().items()}}, tmp_path / 'r50_det.pth')
    for name in ('r50.pth', 'r50_det.pth'):
        loaded = common.build_resnet50(str(tmp_path / name))
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in resnet.state_dict().items())
