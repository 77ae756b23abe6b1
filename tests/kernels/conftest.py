import os

if os.environ.get('TRITON_INTERPRET', '0') == '1':
    import interpreter_patch
    interpreter_patch.install()
