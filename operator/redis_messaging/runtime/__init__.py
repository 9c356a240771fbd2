"""The operator at run time: the :class:`~redis_messaging.runtime.operator.Operator` object, a
controller per resource, and the schedulers that run their passes and autoscaler ticks."""
