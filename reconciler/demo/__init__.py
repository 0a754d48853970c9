"""The embedded demo: a speech-to-text layout on moto's server, in-process, with the real worker."""
