from .check_hook import VMambaCheckHook
from .loss_record_hook import LossRecordHook

__all__ = ['LossRecordHook', 'VMambaCheckHook']
