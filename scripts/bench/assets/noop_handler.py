"""TorchServe's own floor, for `mar bench` only: a handler that loads nothing and answers at once."""


def handle(data, context):
    if data is None:
        return None
    return [{"outputs": []} for _ in data]
