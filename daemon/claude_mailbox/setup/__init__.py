"""Set-up and deployment, apart from the daemon's own modules: the managed virtual environment and
version sync (lifecycle), service-manager backends (autostart), the doctor, status, and
settings.json patching for hooks installed without the plugin.

Only the CLI's set-up verbs and the hooks' slow paths import these; the daemon never does.
"""
