"""A mypy plugin for what rayr's annotations alone cannot say.

Enable it in the mypy config (``plugins = ["rayr.mypy_plugin"]``). It

- checks the arguments of ``f.remote(...)``, ``Cls.remote(...)`` and
  ``handle.method.remote(...)`` against the function, ``__init__`` or method, where each
  parameter of type ``T`` also takes an ``ObjectRef[T]`` (the task receives its value);
  ``ParamSpec`` cannot say that, so without the plugin ``.remote()`` takes any arguments;
- types ``@rayr.remote`` functions from their definition: a generator function streams
  whatever its annotation says, and a generic one (``def f(x: T) -> T``) stays generic
  (the overloads alone read it as a generator of ``Never``);
- gives a class decorated with ``@rayr.remote`` its ``remote`` and ``options`` (mypy ignores
  what a class decorator returns, so it would otherwise still be the plain class);
- types ``handle.method`` on an ``ActorHandle[Cls]`` from ``Cls.method``: ``.remote()``
  returns an ``ObjectRef`` of what it returns (awaited, for ``async def``), or an
  ``ObjectRefGenerator`` for a generator; a method the class lacks is an error.

Not checked: ``.options()`` values' effect on what ``.remote()`` returns (``num_returns``
other than 1 makes it ``Any``), overloaded methods and constructors, methods of generic
actor classes (their type variables become ``Any``).

Only mypy imports this module; rayr never does at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from mypy.errorcodes import ATTR_DEFINED
from mypy.maptype import map_instance_to_supertype
from mypy.nodes import ARG_STAR, ARG_STAR2, Argument, Decorator, FuncDef, TypeInfo, Var
from mypy.plugin import (
    AttributeContext,
    ClassDefContext,
    FunctionContext,
    MethodContext,
    MethodSigContext,
    Plugin,
)
from mypy.plugins.common import add_method_to_class
from mypy.subtypes import find_member
from mypy.typeops import type_object_type
from mypy.types import (
    AnyType,
    CallableType,
    FunctionLike,
    Instance,
    Parameters,
    Type,
    TypeOfAny,
    UnionType,
    get_proper_type,
)
from mypy.typevars import fill_typevars_with_any

OBJECT_REF = "rayr.object_ref.ObjectRef"
GENERATOR = "rayr.streaming.ObjectRefGenerator"
ACTOR_CLASS = "rayr.actor.ActorClass"
ACTOR_HANDLE = "rayr.actor.ActorHandle"
ACTOR_METHOD = "rayr.actor.ActorMethod"
REMOTE = "rayr.api.remote"
REMOTE_DECORATOR = "rayr.api.RemoteDecorator.__call__"  # what @remote(...options) returns
REMOTE_FUNCTION = "rayr.remote_function.RemoteFunction"
READY_METHOD = "__ray_ready__"  # every actor has it (rayr.task_spec.READY_METHOD)
METADATA = "rayr"  # TypeInfo.metadata key marking a class decorated with @rayr.remote
ITEM_TYPES = ("typing.Iterator", "typing.AsyncIterator")


class RayrPlugin(Plugin):
    """The hooks: ``@remote`` on classes, ``.remote()`` signatures, ``ActorHandle`` attributes."""

    def get_class_decorator_hook_2(self, fullname: str) -> Callable[[ClassDefContext], bool] | None:
        return _add_actor_methods if fullname == REMOTE else None

    def get_method_signature_hook(self, fullname: str) -> Callable[[MethodSigContext], FunctionLike] | None:
        if fullname in (f"{ACTOR_METHOD}.remote", f"{REMOTE_FUNCTION}.remote"):
            return partial(_call_signature, self)
        if fullname == f"{ACTOR_CLASS}.remote":
            return partial(_class_signature, self)
        owner, _, name = fullname.rpartition(".")
        if name == "remote":
            node = self.lookup_fully_qualified(owner)
            if node is not None and isinstance(node.node, TypeInfo) and METADATA in node.node.metadata:
                info = node.node
                return partial(_constructor_signature, self, info=info)
        return None

    def get_function_hook(self, fullname: str) -> Callable[[FunctionContext], Type] | None:
        return partial(_remote_function, self) if fullname == REMOTE else None

    def get_method_hook(self, fullname: str) -> Callable[[MethodContext], Type] | None:
        return partial(_remote_function, self) if fullname == REMOTE_DECORATOR else None

    def get_attribute_hook(self, fullname: str) -> Callable[[AttributeContext], Type] | None:
        if fullname.startswith(ACTOR_HANDLE + "."):
            name = fullname[len(ACTOR_HANDLE) + 1:]
            return partial(_actor_method, self, name=name)
        return None


def _instance(plugin: Plugin, fullname: str, args: list[Type]) -> Instance:
    """``fullname[args]``, found by full name (the checker's own lookup wants every module on
    the way to be imported by name, and ``rayr`` only imports names from its submodules)."""
    node = plugin.lookup_fully_qualified(fullname)
    assert node is not None and isinstance(node.node, TypeInfo), fullname
    return Instance(node.node, args)


def _add_actor_methods(ctx: ClassDefContext) -> bool:
    """``Cls.remote(...) -> ActorHandle[Cls]`` and ``Cls.options(...) -> ActorClass[Cls]``, as
    class methods of the decorated class (its arguments are checked by _constructor_signature)."""
    info = ctx.cls.info
    info.metadata[METADATA] = {"actor": True}
    cls_type = fill_typevars_with_any(info)
    any_type = AnyType(TypeOfAny.explicit)
    star = [Argument(Var("args", any_type), any_type, None, ARG_STAR),
            Argument(Var("kwargs", any_type), any_type, None, ARG_STAR2)]
    for name, returns in (("remote", ACTOR_HANDLE), ("options", ACTOR_CLASS)):
        if name not in info.names or info.names[name].plugin_generated:
            add_method_to_class(ctx.api, ctx.cls, name, star if name == "remote" else star[1:],
                                ctx.api.named_type(returns, [cls_type]), is_classmethod=True)
    return True


def _remote_function(plugin: Plugin, ctx: FunctionContext | MethodContext) -> Type:
    """``remote(f)``: ``RemoteFunction[<f's parameters>, Out]``, read from f's definition."""
    default = get_proper_type(ctx.default_return_type)
    if not (isinstance(default, Instance) and default.type.fullname == REMOTE_FUNCTION
            and ctx.arg_types and ctx.arg_types[0]):
        return ctx.default_return_type
    fn = get_proper_type(ctx.arg_types[0][0])
    if not isinstance(fn, CallableType) or not isinstance(fn.definition, FuncDef):
        return ctx.default_return_type
    params = Parameters(fn.arg_types, fn.arg_kinds, fn.arg_names, variables=fn.variables)
    return _instance(plugin, REMOTE_FUNCTION, [params, _output(plugin, fn.definition, fn.ret_type, False)])


def _widened(plugin: Plugin, ctx: MethodSigContext, params: Parameters | CallableType) -> CallableType:
    """The default signature with ``params``' parameters, each ``T`` also taking ``ObjectRef[T]``."""
    types = []
    for t in params.arg_types:
        if isinstance(get_proper_type(t), AnyType):
            types.append(t)
        else:
            types.append(UnionType.make_union([t, _instance(plugin, OBJECT_REF, [t])]))
    return ctx.default_signature.copy_modified(
        arg_types=types, arg_kinds=list(params.arg_kinds), arg_names=list(params.arg_names),
        variables=[*ctx.default_signature.variables, *params.variables],
    )


def _call_signature(plugin: Plugin, ctx: MethodSigContext) -> FunctionLike:
    """``RemoteFunction[P, Out].remote`` and ``ActorMethod[P, Out].remote``: P's parameters."""
    typ = ctx.type
    if isinstance(typ, Instance) and typ.args:
        params = get_proper_type(typ.args[0])
        if isinstance(params, Parameters | CallableType) and not params.is_ellipsis_args:
            return _widened(plugin, ctx, params)
    return ctx.default_signature


def _class_signature(plugin: Plugin, ctx: MethodSigContext) -> FunctionLike:
    """``ActorClass[Cls].remote``: the parameters of ``Cls.__init__``."""
    typ = ctx.type
    if isinstance(typ, Instance) and typ.args:
        cls = get_proper_type(typ.args[0])
        if isinstance(cls, Instance):
            return _constructor_signature(plugin, ctx, cls.type)
    return ctx.default_signature


def _constructor_signature(plugin: Plugin, ctx: MethodSigContext, info: TypeInfo) -> FunctionLike:
    init = get_proper_type(type_object_type(info, lambda name: _instance(plugin, name, [])))
    if isinstance(init, CallableType) and not info.type_vars:
        return _widened(plugin, ctx, init)
    return ctx.default_signature  # an overloaded or generic constructor: arguments unchecked


def _actor_method(plugin: Plugin, ctx: AttributeContext, name: str) -> Type:
    """``handle.name`` on an ``ActorHandle[Cls]``: ``ActorMethod[<Cls.name's parameters>, Out]``."""
    default = get_proper_type(ctx.default_attr_type)
    handle = ctx.type
    if not (isinstance(default, Instance) and default.type.fullname == ACTOR_METHOD
            and isinstance(handle, Instance) and handle.args):
        return ctx.default_attr_type  # not a method lookup through __getattr__
    cls = get_proper_type(handle.args[0])
    if not isinstance(cls, Instance) or name == READY_METHOD:
        return ctx.default_attr_type
    symbol = cls.type.get(name)
    method = get_proper_type(find_member(name, cls, cls)) if symbol is not None else None
    # as at run time (actor._methods_of): the class's callable attributes, but dunders
    if method is None or name.startswith("__") or not isinstance(method, FunctionLike | AnyType):
        ctx.api.fail(f'Actor "{cls.type.name}" has no method "{name}"', ctx.context, code=ATTR_DEFINED)
        return ctx.default_attr_type
    if not isinstance(method, CallableType):
        return ctx.default_attr_type  # Any (e.g. @rayr.method(num_returns=2)), or overloaded
    params = Parameters(method.arg_types, method.arg_kinds, method.arg_names, variables=method.variables)
    node = symbol.node if symbol is not None else None
    return _instance(plugin, ACTOR_METHOD, [params, _output(plugin, node, method.ret_type, True)])


def _output(plugin: Plugin, node: object, returns: Type, awaited: bool) -> Type:
    """What ``.remote()`` of a function (``node``) returning ``returns`` gives back: as at
    run time, a generator function streams (whatever its annotation), and an ``async def``
    is awaited where it runs (``awaited``: in an actor; a task is not)."""
    func = node.func if isinstance(node, Decorator) else node
    proper = get_proper_type(returns)
    if isinstance(func, FuncDef) and (func.is_generator or func.is_async_generator):
        item: Type = AnyType(TypeOfAny.unannotated)
        if isinstance(proper, Instance):
            base = next((b for b in proper.type.mro if b.fullname in ITEM_TYPES), None)
            if base is not None:
                item = map_instance_to_supertype(proper, base).args[0]
        return _instance(plugin, GENERATOR, [item])
    if (awaited and isinstance(func, FuncDef) and func.is_coroutine and isinstance(proper, Instance)
            and proper.type.fullname == "typing.Coroutine"):
        returns = proper.args[-1]
    return _instance(plugin, OBJECT_REF, [returns])


def plugin(version: str) -> type[Plugin]:
    """mypy's entry point."""
    del version
    return RayrPlugin
