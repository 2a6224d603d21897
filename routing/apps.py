from django.apps import AppConfig


class RoutingConfig(AppConfig):
    name = "routing"
    verbose_name = "Routing"

    def ready(self) -> None:
        from routing import signals
        from routing.selectors import unknown_alias_names
        from tenants import alias_names

        signals.connect()
        # tenants checks a key's allowed aliases through this hook: it cannot import routing.
        alias_names.register(unknown_alias_names)
