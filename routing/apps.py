from django.apps import AppConfig


class RoutingConfig(AppConfig):
    name = "routing"
    verbose_name = "Routing"

    def ready(self) -> None:
        from django.core.signals import request_finished

        from aperture import load_shedding
        from routing import signals
        from routing.selectors import unknown_alias_names
        from tenants import alias_names

        signals.connect()
        # An inference request's place in flight, once its answer is closed.
        request_finished.connect(
            load_shedding.leave_if_still_in_flight, dispatch_uid="aperture.in_flight"
        )
        # tenants checks a key's allowed aliases through this hook: it cannot import routing.
        alias_names.register(unknown_alias_names)
