"""tools/analysis/scaling.py on the CPU at small sizes: it writes the PNG, the CSV and the markdown table."""
import csv


def test_scaling_writes_plot_and_tables(load_tool, tmp_path):
    scaling = load_tool('scaling')
    result = scaling.main(['--arch', 'tiny', '--sizes', '32', '64', '--warmup', '0', '--iters', '1',
                           '--out-dir', str(tmp_path)])
    assert set(result['results']) == {'VMamba-tiny', 'Swin-T', 'ResNet-50'}
    for rows in result['results'].values():
        assert [row['size'] for row in rows] == [32, 64]
        assert all(row['status'] == 'ok' and row['img_per_s'] > 0 for row in rows)
        assert rows[0]['time_per_pixel_ratio'] == 1.0
    assert (tmp_path / 'scaling.png').read_bytes()[:4] == b'\x89PNG'
    with open(tmp_path / 'scaling.csv') as file:
        assert len(list(csv.DictReader(file))) == 6
    table = (tmp_path / 'scaling.md').read_text()
    assert '| VMamba-tiny | 64 |' in table and 'time slope' in table


def test_linearity_slopes(load_tool):
    scaling = load_tool('scaling')
    rows = [dict(size=s, pixels=s * s, status='ok', ms=2.0 * s * s, peak_mem_mb=float(s**4)) for s in (100, 200, 400)]
    slopes = scaling.add_linearity(rows)
    assert abs(slopes['time_slope'] - 1.0) < 1e-9 and abs(slopes['mem_slope'] - 2.0) < 1e-9
    assert [round(row['time_per_pixel_ratio'], 9) for row in rows] == [1.0, 1.0, 1.0]
    assert [row['mem_per_pixel_ratio'] for row in rows] == [1.0, 4.0, 16.0]


def test_scaling_arguments(load_tool):
    scaling = load_tool('scaling')
    args = scaling.parse_args(['--sizes', '64', '32', '64', '--device', 'cpu'])
    assert args.arch == 'tiny' and args.sizes == [32, 64]
    import pytest
    with pytest.raises(SystemExit):
        scaling.parse_args(['--sizes', '16'])
