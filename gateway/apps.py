from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"
    verbose_name = "Gateway"

    def ready(self) -> None:
        from axes.signals import user_locked_out

        from gateway import admin_login

        user_locked_out.connect(admin_login.record_lockout, dispatch_uid="aperture-lockout-audit")
