"""Tests of the cervical routes that live under tasks/cervical/<route>/."""
