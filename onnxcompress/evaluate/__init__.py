"""Running models (runner), comparing results (compare), timing them (bench): kept separate."""
