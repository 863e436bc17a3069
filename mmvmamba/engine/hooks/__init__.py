from .check_hook import VMambaCheckHook

__all__ = ['VMambaCheckHook']
