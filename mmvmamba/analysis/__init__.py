"""Analysis helpers: FLOP counting with VMamba's selective-scan rule (used by ``tools/analysis``)."""
from .flops import SCAN_UNIT_OP, count_flops, count_parameters, scan_unit_flops, selective_scan_flops, ss2d_scan_as_unit

__all__ = [
    'SCAN_UNIT_OP', 'count_flops', 'count_parameters', 'scan_unit_flops', 'selective_scan_flops',
    'ss2d_scan_as_unit'
]
