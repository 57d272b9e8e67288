-- Patient sign-in keys (issue 7): the patient a key belongs to. Analyst and operator keys leave it NULL.
ALTER TABLE api_keys ADD COLUMN subject TEXT
