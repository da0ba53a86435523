"""Typed HTTP clients for the project's services and the helper that serves an app locally.

Every caller of the CRM API or the verifier (the runner, the Gymnasium env, the verifier,
corpus replay and validation, the CL-Bench import, the benchmarks) goes through this
package, so a route or auth change is one edit.
"""
