"""Global ``nn.Module`` hooks that ``torch.compile`` runs as they are, not traced.

The package watches every module call in some blocks through torch's global hooks
(``register_module_forward_pre_hook``: the buffers a check must put back, the modules a
pair calls, the networks' modes, autocast). Dynamo inlines global hooks into the graph of
a compiled module (``torch.compile(net)``) and failed on ours, whose closures key dicts
by module ("UnspecializedNNModuleVariable(Sequential) is already tracked for mutation":
tester DO, a compiled decoder under ``score`` and ``iwae``). Registered here, each hook is
wrapped in ``torch.compiler.disable``: Dynamo breaks its graph at the hook and runs it
eagerly, as it would run any other Python it must not trace.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.hooks import RemovableHandle


def global_forward_pre_hook(hook: Callable) -> RemovableHandle:
    """``torch.nn.modules.module.register_module_forward_pre_hook(hook)``, the hook run
    outside any Dynamo trace. Returns the handle that removes it."""
    return torch.nn.modules.module.register_module_forward_pre_hook(torch.compiler.disable(hook))


def global_forward_hook(hook: Callable, always_call: bool = False) -> RemovableHandle:
    """``torch.nn.modules.module.register_module_forward_hook(hook, always_call=...)``, the
    hook run outside any Dynamo trace. Returns the handle that removes it."""
    return torch.nn.modules.module.register_module_forward_hook(
        torch.compiler.disable(hook), always_call=always_call
    )
