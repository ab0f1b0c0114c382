"""Code that runs on the platform's hosts (not on the operator's machine).

The `platform_code` role copies this package to `/opt/sciplat/lib` on the hosts
and runs it from the venv `/opt/sciplat/venv`. Modules here may import only the
standard library and the packages their component declares in a
`platform_code_requirements_<component>` variable (see docs/development.md).
"""
